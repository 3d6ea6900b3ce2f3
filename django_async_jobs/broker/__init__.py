"""The Redis side: key names, atomic Lua steps, and the client that runs them."""
