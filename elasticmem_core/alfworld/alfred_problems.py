"""ALFRED-format household problems written by this package (no download): initial_state.pddl + traj_data.json.

`alfworld-generate` turns each problem folder into a playable TextWorld game (game.tw-pddl) and the expert planner
solves it (elasticmem_core/alfworld/environment.py). Pure Python: writing problems needs neither alfworld nor textworld.

Rooms follow ALFRED's floor-plan numbering (kitchens 1-30, living rooms 201-230, bedrooms 301-330, bathrooms
401-430). Each scene number seeds one room layout (which receptacles, how many). Splits, as in ALFWorld:
- train and valid_seen use the seen rooms (scene numbers 1..SEEN_ROOMS of each kind) and seen goals;
- valid_unseen uses new rooms (the next UNSEEN_ROOMS scene numbers) and held-out (object, receptacle) goals that
  no training game has.
Everything is drawn from `random.Random` seeded by strings, so the same seed writes byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
SPLITS = ("train", "valid_seen", "valid_unseen")
SEEN_ROOMS, UNSEEN_ROOMS = 12, 4  # per room kind
ROOM_BASE = {"kitchen": 0, "livingroom": 200, "bedroom": 300, "bathroom": 400}

# receptacle type -> (openable, how many in a room: lo, hi)
RECEPTACLES = {
    "CounterTop": (False, 1, 3), "Cabinet": (True, 2, 6), "Drawer": (True, 1, 5), "Fridge": (True, 1, 1),
    "Microwave": (True, 1, 1), "SinkBasin": (False, 1, 1), "StoveBurner": (False, 2, 4), "DiningTable": (False, 1, 1),
    "Shelf": (False, 1, 3), "GarbageCan": (False, 1, 1), "CoffeeMachine": (False, 1, 1), "Sofa": (False, 1, 1),
    "ArmChair": (False, 1, 2), "CoffeeTable": (False, 1, 1), "SideTable": (False, 1, 2), "TVStand": (False, 1, 1),
    "Dresser": (False, 1, 1), "Bed": (False, 1, 1), "Desk": (False, 1, 1), "Safe": (True, 1, 1),
    "LaundryHamper": (False, 1, 1), "BathtubBasin": (False, 1, 1), "Toilet": (False, 1, 1),
    "TowelHolder": (False, 1, 1), "HandTowelHolder": (False, 1, 1), "ToiletPaperHanger": (False, 1, 1),
}
# room kind -> (receptacles every such room has, optional receptacles drawn per layout)
ROOMS = {
    "kitchen": (("CounterTop", "Cabinet", "Fridge", "Microwave", "SinkBasin", "StoveBurner"),
                ("Drawer", "DiningTable", "Shelf", "GarbageCan", "CoffeeMachine")),
    "livingroom": (("Sofa", "CoffeeTable", "SideTable"),
                   ("ArmChair", "TVStand", "Shelf", "Drawer", "Cabinet", "DiningTable", "GarbageCan", "Dresser")),
    "bedroom": (("Bed", "Desk", "SideTable"),
                ("Dresser", "Shelf", "Drawer", "GarbageCan", "LaundryHamper", "Safe", "ArmChair")),
    "bathroom": (("CounterTop", "SinkBasin", "Toilet"),
                 ("Cabinet", "Drawer", "BathtubBasin", "TowelHolder", "HandTowelHolder", "ToiletPaperHanger",
                  "GarbageCan", "Shelf")),
}
# object type -> (rooms it appears in, properties); properties: c(lean) h(eat) (c)o(ol) r(eceptacle object)
OBJECTS = {
    "Apple": ("kitchen", "cho"), "Potato": ("kitchen", "cho"), "Tomato": ("kitchen", "cho"),
    "Egg": ("kitchen", "cho"), "Lettuce": ("kitchen", "co"), "Bread": ("kitchen", "ho"),
    "Mug": ("kitchen livingroom", "chor"), "Cup": ("kitchen", "chor"), "Plate": ("kitchen livingroom", "chor"),
    "Bowl": ("kitchen livingroom bedroom", "cor"), "Pan": ("kitchen", "co"), "Pot": ("kitchen", "co"),
    "Knife": ("kitchen", "c"), "Fork": ("kitchen", "c"), "Spoon": ("kitchen", "c"), "Spatula": ("kitchen", "c"),
    "Ladle": ("kitchen", "c"), "SaltShaker": ("kitchen", ""), "PepperShaker": ("kitchen", ""),
    "WineBottle": ("kitchen", "o"), "DishSponge": ("kitchen bathroom", "c"),
    "Book": ("livingroom bedroom", ""), "CD": ("livingroom bedroom", ""), "CellPhone": ("livingroom bedroom", ""),
    "CreditCard": ("livingroom bedroom", ""), "KeyChain": ("livingroom bedroom", ""), "Pen": ("bedroom", ""),
    "Pencil": ("bedroom", ""), "Pillow": ("livingroom bedroom", ""), "RemoteControl": ("livingroom", ""),
    "Laptop": ("livingroom bedroom", ""), "AlarmClock": ("bedroom", ""), "Watch": ("livingroom bedroom", ""),
    "Vase": ("livingroom", ""), "Statue": ("livingroom", ""), "Box": ("livingroom", ""),
    "Newspaper": ("livingroom", ""), "TissueBox": ("livingroom bathroom", ""),
    "SoapBar": ("bathroom", "c"), "SoapBottle": ("bathroom kitchen", ""), "Cloth": ("bathroom", "c"),
    "Towel": ("bathroom", ""), "HandTowel": ("bathroom", ""), "ToiletPaper": ("bathroom", ""),
    "SprayBottle": ("bathroom", ""), "Candle": ("bathroom", ""), "Plunger": ("bathroom", ""),
    "ScrubBrush": ("bathroom", ""),
}
_SOFT = {"Pillow", "Book", "Laptop", "CellPhone", "RemoteControl", "CreditCard", "KeyChain", "Newspaper", "Box",
         "CD", "Watch", "Pen", "Pencil"}
_FOOD = {"Apple", "Potato", "Tomato", "Egg", "Lettuce", "Bread"}
_DISHES = {"Mug", "Cup", "Plate", "Bowl"}
# receptacle type -> the object types it can contain (None: any object of its room except soft-only places)
CAN_CONTAIN: dict[str, set[str] | None] = {
    "CounterTop": None, "Cabinet": None, "Drawer": None, "DiningTable": None, "Shelf": None, "SideTable": None,
    "Desk": None, "Dresser": None, "CoffeeTable": None, "TVStand": None,
    "Fridge": _FOOD | _DISHES | {"Pan", "Pot", "WineBottle"}, "Microwave": _FOOD | _DISHES,
    "SinkBasin": _FOOD | _DISHES | {"Pan", "Pot", "Knife", "Fork", "Spoon", "Spatula", "Ladle", "DishSponge",
                                    "SoapBar", "Cloth"},
    "StoveBurner": {"Pan", "Pot"}, "CoffeeMachine": {"Mug"},
    "GarbageCan": _FOOD | {"SoapBottle", "SprayBottle", "Newspaper", "TissueBox", "Cloth", "SoapBar", "CD",
                           "ToiletPaper", "DishSponge", "Pencil", "Pen"},
    "Sofa": _SOFT, "ArmChair": _SOFT, "Bed": _SOFT, "Safe": {"CellPhone", "CreditCard", "KeyChain", "CD", "Watch"},
    "LaundryHamper": {"Cloth", "Towel", "Pillow"}, "BathtubBasin": {"SoapBar", "Cloth", "DishSponge"},
    "Toilet": {"SoapBar", "SoapBottle", "SprayBottle", "Candle", "ToiletPaper", "Cloth"},
    "TowelHolder": {"Towel"}, "HandTowelHolder": {"HandTowel"}, "ToiletPaperHanger": {"ToiletPaper"},
}
LAMP_RECEPTACLES = ("SideTable", "Desk", "Dresser")  # a DeskLamp stands on one of these (look_at_obj_in_light)
# receptacles a task may not target: the appliance that does the task's state change, and holders of one thing
_NOT_TARGET = {"pick_clean_then_place_in_recep": {"SinkBasin"}, "pick_heat_then_place_in_recep": {"Microwave"},
               "pick_cool_then_place_in_recep": {"Fridge"}}
_SINGLE = {"TowelHolder", "HandTowelHolder", "ToiletPaperHanger", "CoffeeMachine", "StoveBurner"}


def can_contain(recep: str, obj: str) -> bool:
    allowed = CAN_CONTAIN[recep]
    return obj not in {"Towel", "HandTowel", "ToiletPaper"} if allowed is None else obj in allowed


def _stable(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def held_out(task_type: str, obj: str, recep: str) -> bool:
    """About one in four (object, receptacle) goals of each task type is kept for valid_unseen only."""
    return _stable(f"{task_type}|{obj}|{recep}") % 4 == 0


@dataclass(frozen=True)
class Layout:
    scene: int                       # ALFRED floor-plan number
    kind: str                        # kitchen | livingroom | bedroom | bathroom
    receptacles: tuple[tuple[str, int], ...]   # (type, count)


def layout(scene: int, seed: int) -> Layout:
    """The room of floor plan `scene`: its required receptacles plus about half of the optional ones."""
    kind = next(k for k, base in sorted(ROOM_BASE.items(), key=lambda kv: -kv[1]) if scene > base)
    rng = random.Random(f"{seed}-layout-{scene}")
    required, optional = ROOMS[kind]
    chosen = list(required) + [r for r in optional if rng.random() < 0.5]
    return Layout(scene, kind, tuple((r, rng.randint(*RECEPTACLES[r][1:])) for r in chosen))


def rooms(split: str) -> list[int]:
    first = 1 if split != "valid_unseen" else SEEN_ROOMS + 1
    n = SEEN_ROOMS if split != "valid_unseen" else UNSEEN_ROOMS
    return [base + i for base in ROOM_BASE.values() for i in range(first, first + n)]


def _room_objects(kind: str, props: str = "") -> list[str]:
    return [o for o, (where, p) in OBJECTS.items() if kind in where.split() and all(c in p for c in props)]


def goals(task_type: str, lay: Layout, split: str) -> list[tuple[str, str]]:
    """(object, target) pairs this room allows for the task (target = receptacle, or DeskLamp for looking)."""
    receps = [r for r, _ in lay.receptacles]
    if task_type == "look_at_obj_in_light":
        if not any(r in receps for r in LAMP_RECEPTACLES):
            return []
        lookable = _SOFT | {"Bowl", "Mug", "AlarmClock", "Statue", "Vase"}
        pairs = [(o, "DeskLamp") for o in _room_objects(lay.kind) if o in lookable]
    else:
        need = {"pick_clean_then_place_in_recep": ("c", "SinkBasin"),
                "pick_heat_then_place_in_recep": ("h", "Microwave"),
                "pick_cool_then_place_in_recep": ("o", "Fridge")}.get(task_type, ("", None))
        if need[1] and need[1] not in receps:
            return []
        skip = _NOT_TARGET.get(task_type, set()) | _SINGLE
        pairs = [(o, r) for o in _room_objects(lay.kind, need[0]) for r in receps
                 if r not in skip and can_contain(r, o)]
        if task_type == "pick_two_obj_and_place":
            pairs = [(o, r) for o, r in pairs if r not in {"Microwave", "Safe"}]
    unseen = split == "valid_unseen"
    return [(o, r) for o, r in pairs if held_out(task_type, o, r) == unseen]


# ----------------------------------------------------------------------------------------------------------------
@dataclass
class Problem:
    """One ALFRED-format problem: where it goes and what its two files say."""
    split: str
    folder: str                      # "<task_type>-<Object>-None-<Target>-<scene>/trial_T<index>"
    task_type: str
    pddl: str
    traj_data: dict

    def write(self, root: Path) -> Path:
        d = root / self.split / self.folder
        d.mkdir(parents=True, exist_ok=True)
        (d / "initial_state.pddl").write_text(self.pddl)
        (d / "traj_data.json").write_text(json.dumps(self.traj_data, indent=1, sort_keys=True) + "\n")
        return d


def _name(kind: str, i: int) -> str:
    """An ALFRED-style id that AlfredDemangler turns into "<kind> <n>" (a sink basin must end in "SinkBasin")."""
    if kind in ("SinkBasin", "BathtubBasin"):
        return f"{kind[:-5]}_bar__plus_00_dot_{i:02d}_bar_{kind}"
    return f"{kind}_bar__plus_00_dot_{i:02d}"


GOAL_PDDL = {  # ALFWorld's goal library (alfworld/gen/goal_library.py), in plain PDDL
    "pick_and_place_simple": "(exists (?r - receptacle) (exists (?o - object) (and (inReceptacle ?o ?r) "
                             "(objectType ?o {obj}Type) (receptacleType ?r {recep}Type))))",
    "pick_clean_then_place_in_recep": "(exists (?r - receptacle) (exists (?o - object) (and (cleanable ?o) "
                                      "(objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isClean ?o) "
                                      "(inReceptacle ?o ?r))))",
    "pick_heat_then_place_in_recep": "(exists (?r - receptacle) (exists (?o - object) (and (heatable ?o) "
                                     "(objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isHot ?o) "
                                     "(inReceptacle ?o ?r))))",
    "pick_cool_then_place_in_recep": "(exists (?r - receptacle) (exists (?o - object) (and (coolable ?o) "
                                     "(objectType ?o {obj}Type) (receptacleType ?r {recep}Type) (isCool ?o) "
                                     "(inReceptacle ?o ?r))))",
    "pick_two_obj_and_place": "(exists (?r - receptacle) (exists (?o1 - object) (and (objectType ?o1 {obj}Type) "
                              "(receptacleType ?r {recep}Type) (inReceptacle ?o1 ?r) (exists (?o2 - object) "
                              "(and (not (= ?o1 ?o2)) (objectType ?o2 {obj}Type) (receptacleType ?r {recep}Type) "
                              "(inReceptacle ?o2 ?r))))))",
    "look_at_obj_in_light": "(exists (?ot - object ?r - receptacle ?a - agent ?l - location) (and (objectType ?ot "
                            "{toggle}Type) (toggleable ?ot) (isToggled ?ot) (receptacleAtLocation ?r ?l) "
                            "(atLocation ?a ?l) (inReceptacle ?ot ?r))) (exists (?o - object ?a - agent) "
                            "(and (objectType ?o {obj}Type) (holds ?a ?o)))",
}


def _spots(lay: Layout, obj: str, target: str) -> set[str]:
    """Receptacle types of the room where `obj` may start: any that can hold it, except the goal's target."""
    return {r for r, _ in lay.receptacles if r != target and can_contain(r, obj)}


def make_problem(split: str, index: int, seed: int) -> Problem:
    """Problem `index` of `split`: task type by round robin, then room, goal and object placement by seed."""
    task_type = TASK_TYPES[index % len(TASK_TYPES)]
    rng = random.Random(f"{seed}-{split}-{index}")
    options = []
    for scene in rooms(split):
        lay = layout(scene, seed)
        options += [(lay, o, r) for o, r in goals(task_type, lay, split) if _spots(lay, o, r)]
    lay, obj, target = rng.choice(options)

    receps = [(r, _name(r, i + 1)) for r, n in lay.receptacles for i in range(n)]
    objects: list[tuple[str, str, str]] = []  # (type, id, receptacle id)

    def place(kind: str, ids: list[str]) -> None:
        objects.append((kind, _name(kind, len(objects) + 1), rng.choice(ids)))

    start = [rid for r, rid in receps if r in _spots(lay, obj, target)]  # never already in the target
    for _ in range(2 if task_type == "pick_two_obj_and_place" else rng.randint(1, 2)):
        place(obj, start)
    if task_type == "look_at_obj_in_light":
        place("DeskLamp", [rid for r, rid in receps if r in LAMP_RECEPTACLES])
    others = [o for o in _room_objects(lay.kind) if o != obj and _spots(lay, o, target)]
    for kind in rng.sample(others, k=min(len(others), rng.randint(4, 8))):
        place(kind, [rid for r, rid in receps if r in _spots(lay, kind, target)])

    location = {rid: f"loc_bar_{i + 1}" for i, (_, rid) in enumerate(receps)}
    obj_types = sorted({k for k, _, _ in objects})
    rec_types = sorted({r for r, _ in receps})
    lines = ["(define (problem plan_trial_T%05d)" % index, "(:domain alfred)", "(:objects", "agent1 - agent"]
    lines += [f"{t}Type - otype" for t in obj_types] + [f"{t}Type - rtype" for t in rec_types]
    lines += [f"{oid} - object" for _, oid, _ in objects] + [f"{rid} - receptacle" for _, rid in receps]
    lines += ["loc_bar_0 - location"] + [f"{loc} - location" for loc in location.values()] + [")", "(:init"]
    lines += [f"(receptacleType {rid} {r}Type)" for r, rid in receps]
    lines += [f"(openable {rid})" for r, rid in receps if RECEPTACLES[r][0]]
    lines += [f"(receptacleAtLocation {rid} {location[rid]})" for _, rid in receps]
    lines += [f"(canContain {r}Type {t}Type)" for r in rec_types for t in obj_types
              if t != "DeskLamp" and can_contain(r, t)]
    for kind, oid, rid in objects:
        lines += [f"(objectType {oid} {kind}Type)", f"(inReceptacle {oid} {rid})",
                  f"(objectAtLocation {oid} {location[rid]})"]
        if kind == "DeskLamp":
            lines.append(f"(toggleable {oid})")
            continue
        props = OBJECTS[kind][1]
        lines.append(f"(pickupable {oid})")
        lines += [f"({fact} {oid})" for c, fact in (("c", "cleanable"), ("h", "heatable"), ("o", "coolable"),
                                                     ("r", "isReceptacleObject")) if c in props]
    lines += ["(atLocation agent1 loc_bar_0)", ")"]
    look = task_type == "look_at_obj_in_light"
    goal = GOAL_PDDL[task_type].format(obj=obj, recep=target, toggle=target)
    lines += [f"(:goal (and {goal}))", ")", ""]

    folder = f"{task_type}-{obj}-None-{target}-{lay.scene}/trial_T{index:05d}"
    traj = {"task_type": task_type, "task_id": f"trial_T{index:05d}",
            "pddl_params": {"object_target": obj, "parent_target": "" if look else target,
                            "toggle_target": target if look else "", "mrecep_target": "", "object_sliced": False},
            "scene": {"scene_num": lay.scene, "floor_plan": f"FloorPlan{lay.scene}", "room": lay.kind},
            "turk_annotations": {"anns": []}}
    return Problem(split, folder, task_type, "\n".join(lines), traj)


def write_problems(root: Path, counts: dict[str, int], seed: int) -> list[Path]:
    """Write counts[split] problems per split under root/<split>/...; returns their folders."""
    return [make_problem(split, i, seed).write(root) for split in SPLITS for i in range(counts.get(split, 0))]
