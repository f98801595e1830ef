"""The torch-free middle shared by both compilers: the module program IR (`program.py`),
lowering (`module.py`) with each level's head split and merge (`heads.py`), the frequency rule
and the stage within a unit each value is evaluated at (`timing.py`), the fast forms
(`forms.py`), what modules cannot compile yet (`unsupported.py`), the code emitter
(`emit.py`), the derivation table both compilers use (`derive.py`), and the fused-op rewrite
table the optimizer's printer and evaluator read alike (`rewrites.py`)."""
