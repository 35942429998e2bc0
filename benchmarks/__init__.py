"""Benchmarks of the relay on moto and the emulator (`make bench`)."""
