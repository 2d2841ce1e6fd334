"""ALFWorld: the games (generated offline, or the real ones), the environment with expert replays and skill cards,
and ElasticMem as the agent that plays them."""
