"""`nldsl train`: a module spec as the block of a small language model, trained on a generated
task with a compiled optimizer spec (issue 13; docs/training.md)."""
