"""The README's Python snippets run as written (each in its own namespace, one fresh process, in an
empty working directory), and its set-up line installs what pyproject.toml declares."""

import pathlib
import re
import subprocess
import sys
import textwrap
import tomllib

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README, flags=re.S | re.M)


def test_readme_snippets_run(tmp_path):
    blocks = python_blocks()
    assert len(blocks) >= 4
    runner = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        for i, block in enumerate({blocks!r}):
            exec(compile(block, f"README.md python block {{i + 1}}", "exec"), {{"__name__": "__readme__"}})
            print("ran block", i + 1, flush=True)
        """)
    done = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.split("\n").count(f"ran block {len(blocks)}") == 1


def test_readme_set_up_line_names_the_extras_and_the_python_version():
    setup = next(line for line in README.splitlines() if re.search(r"#\s*set-up\s*$", line))
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    assert '".[experiments,test]"' in setup and extras == {"experiments", "test", "peers"}
    assert '".[peers]"' in README
    assert "Python 3.11+" in README


def test_one_repository_url_for_the_badges_and_the_notebooks():
    import json

    url = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    owner_repo = url.removeprefix("https://github.com/")
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    badges = re.findall(r"colab\.research\.google\.com/github/([^/]+/[^/]+)/blob/main/notebooks/(\w+)\.ipynb", README)
    assert {repo for repo, _ in badges} == {owner_repo}
    assert sorted(name for _, name in badges) == [p.stem for p in notebooks]
    for path in notebooks:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        first = "".join(cells[0]["source"])
        assert f'REPO_URL = "{url}"' in first, path.name
        assert '%pip install -q --no-deps "git+{REPO_URL}"' in first, path.name  # keeps Colab's jax
        assert all("REPO_URL =" not in "".join(c["source"]) for c in cells[1:]), path.name
