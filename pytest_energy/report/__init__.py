"""Renderings of results: the terminal table, and (later) markdown and charts."""
