"""The fixed GRPO zero-RL probe: specs, reward, embedded and verl engines."""
