"""ElasticMem's parts, as the paper names them: the latent bank, retrieval through a control token, the budget
policy, the projector, soft-token injection, rewards, rollouts, and the model that holds them together."""
