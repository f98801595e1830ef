"""The validator: every check over a built spec (`validate`), reporting all problems at
once, each located in the spec text."""
