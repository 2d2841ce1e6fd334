"""ALFWorld: the games (generated offline, or the real ones) with expert replays (environment.py, alfred_problems.py),
the skill cards (cards.py), what ElasticMem learns from (training.py) and ElasticMem playing them (play.py)."""
