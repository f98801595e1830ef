"""The grammar ships as package data: `importlib.resources.files("nldsl.grammar")`."""
