"""scripts/code_figures.py: lines per file, long functions and import cycles of a small tree."""

from scripts.code_figures import cycles, import_graph, project_modules, report


def write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_long_functions_lines_and_a_module_level_cycle_are_reported(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    write(tmp_path, "pkg/__init__.py", "")
    write(tmp_path, "pkg/a.py", f"import pkg.b\n\n\ndef long():\n{body}\n\n\ndef short():\n    return 1\n")
    write(tmp_path, "pkg/b.py", "from pkg import a\n")
    # An import inside a function is deferred on purpose: no cycle.
    write(tmp_path, "pkg/c.py", "import pkg.d\n")
    write(tmp_path, "pkg/d.py", "def f():\n    import pkg.c\n")
    assert cycles(import_graph(project_modules(str(tmp_path)))) == [["pkg.a", "pkg.b"]]
    text = report(str(tmp_path), ["pkg/*.py"], 60)
    assert "   78 pkg/a.py" in text and "   71 pkg/a.py:4 long" in text and "short" not in text
    assert "== import cycles (module-level imports): 1\n  pkg.a <-> pkg.b" in text


def test_the_training_code_has_no_import_cycle():
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert cycles(import_graph(project_modules(root))) == []
