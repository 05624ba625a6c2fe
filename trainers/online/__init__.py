"""Online RL from the policy's own rollouts: GRPO family, RLOO, PPO."""
