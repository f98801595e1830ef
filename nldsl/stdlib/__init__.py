"""The standard library: one spec file per algorithm, loadable with `nldsl.load(name)`."""
