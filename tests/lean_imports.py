"""A pytest plugin loaded before all others (`-p lean_imports` in pyproject.toml): keep test processes lean.

JupyterLab brings jsonschema's optional `rfc3987_syntax`, which compiles some forty Lark grammars when imported
(about 1.5 s), and jsonschema imports it whenever it is there, so every `import nbformat` pays for it: each pytest
process does (nbval is a plugin; papermill and jupytext read notebooks with nbformat). It serves only the
"iri"/"iri-reference" format checks, which no notebook validation uses; a None entry in sys.modules makes that
import fail at once and jsonschema goes on without it. Only the test processes: the Lab server keeps it.
"""
import sys

sys.modules.setdefault("rfc3987_syntax", None)
