"""LoRA adapters served at runtime: the engine's adapter API, what each pod must load
or unload, the status read back from the engines, and the loop that drives it."""
