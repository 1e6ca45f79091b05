"""A node whose pods run as local processes (see node.py)."""
