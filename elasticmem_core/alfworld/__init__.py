"""ALFWorld: the games (generated offline, or the real ones) with expert replays (environment.py, alfred_problems.py),
the skill cards (cards.py), what ElasticMem learns from (training.py) and ElasticMem playing them (play.py),
and agents of several runs paired on the same games (pairing.py)."""

# the comparison agents 06 can train beside ElasticMem (alfworld.agents; training.MEMORIES adds ElasticMem's
# "latent"): here, where params checks read them without importing the game code
AGENTS = ("none", "text", "memgen")
