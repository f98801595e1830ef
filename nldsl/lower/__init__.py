"""The torch-free middle shared by both compilers: the module program IR (`program.py`),
lowering (`module.py`), the fast forms (`forms.py`), what modules cannot compile yet
(`unsupported.py`)."""
