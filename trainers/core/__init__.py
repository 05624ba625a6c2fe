"""The shared pieces every trainer uses: the Learner (device, precision, the update), process group, FSDP, checkpoints, optimizer, metrics, log-probs, batching."""
