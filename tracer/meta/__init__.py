"""What makes PyTorch run a user's program on the meta device as on the target: autocast's emulation,
compatibility patches, fused optimizers on meta, routing of `.cuda()`, the target GPU user code sees."""
