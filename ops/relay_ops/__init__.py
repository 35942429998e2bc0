"""The relay on one machine: the Anthropic batch API emulator, the moto stack, and local tools."""
