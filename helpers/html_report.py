"""The report of ``python -m helpers.evaluate --model ...`` as one self-contained HTML page.

Figures are embedded as base64 PNG and MathJax 3 (:func:`helpers.run.mathjax_source`, the copy the book uses) is
inlined, so the page opens offline in any browser. Each number links to its derivation: the equation itself is
read from the book's labelled ``{math}`` blocks (book/metrics.md, book/scores.md, book/collapse.md), shown
typeset beside the table, and linked to the book page's anchor ``equation-<label>``.
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path
from typing import Any

from .artifacts import write_text
from .config import REPO_ROOT

CHAPTERS = ("metrics", "scores", "collapse")
# each number of the report → the label of its equation in the book
LABELS = {
    "auroc": "eq-auroc", "fpr95": "eq-fpr95", "aupr_in": "eq-aupr", "aupr_out": "eq-aupr",
    "msp": "eq-msp", "maxlogit": "eq-maxlogit", "energy": "eq-energy", "mahalanobis": "eq-mahalanobis",
    "vim": "eq-vim", "neco": "eq-neco", "neco_maxlogit": "eq-neco-maxlogit", "knn": "eq-knn", "react": "eq-react",
    "ash": "eq-ash", "gen": "eq-gen",
    "nc1": "eq-nc1", "cdnv": "eq-cdnv", "nc2_equinorm": "eq-nc2-equinorm", "nc2_equiangular": "eq-nc2-equiangular",
    "nc2_maxangle": "eq-nc2-maxangle", "nc3": "eq-nc3", "nc4": "eq-nc4", "nc5": "eq-nc5",
    "nc5_centred": "eq-nc5-centred", "gram": "eq-etf",
}
METRIC_NAMES = {"auroc": "AUROC", "fpr95": "FPR95", "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}


def book_equations(book: Path = REPO_ROOT / "book") -> dict[str, tuple[str, str]]:
    """{label: (chapter, LaTeX)} of every labelled ``{math}`` block of the theory chapters."""
    block = re.compile(r"```\{math\}\s*\n\s*:label:\s*(\S+)\s*\n(.*?)```", re.S)
    out = {}
    for chapter in CHAPTERS:
        path = Path(book) / f"{chapter}.md"
        if path.exists():
            out |= {label: (chapter, tex.strip()) for label, tex in block.findall(path.read_text())}
    return out


def figure_png(fig: Any, dpi: int = 90) -> str:
    """A matplotlib figure as a base64 PNG ``data:`` URI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


Links = dict[str, str]          # {label: URL of the equation in the book}


def equation_links(equations: dict[str, tuple[str, str]], book_url: str = "") -> Links:
    """{label: ``<book_url>book/<chapter>.html#equation-<label>``}, jupyter-book's anchor of each equation."""
    return {label: f"{book_url}book/{chapter}.html#equation-{label}" for label, (chapter, _) in equations.items()}


def _link(key: str, text: str, links: Links) -> str:
    """``text`` linked to the derivation of ``key`` (a score, metric or NC name), plain when it has none."""
    label = LABELS.get(key)
    if label not in links:
        return html.escape(text)
    return f'<a href="{links[label]}" title="eq. {label}">{html.escape(text)}</a>'


def _cell(m: dict[str, Any], key: str) -> str:
    low, high = m.get(f"{key}_low"), m.get(f"{key}_high")
    point = f"{100 * m[key]:.1f}" if m.get(key) is not None else "–"
    return point + (f" [{100 * low:.1f}, {100 * high:.1f}]" if low is not None and high is not None else "")


def _table(header: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{h}</th>" for h in header)
    return f"<table><tr>{th}</tr>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>"
                                             for r in rows) + "</table>"


def ood_tables(ood: dict[str, dict[str, dict]], links: Links) -> str:
    """One table per OOD set: scores as rows, AUROC, FPR95, AUPR-In and AUPR-Out (%, 95 % interval) as columns."""
    header = ["score"] + [f"{_link(k, v, links)} % [95 % CI]" for k, v in METRIC_NAMES.items()]
    return "\n".join(f"<h3>ID test vs {html.escape(name)}</h3>" + _table(
        header, [[_link(s, s, links)] + [_cell(m, k) for k in METRIC_NAMES] for s, m in per_score.items()])
        for name, per_score in ood.items())


def groups_table(groups: dict[str, dict[str, Any]], links: Links) -> str:
    """Mean over each group's OOD sets (e.g. near, far) of every metric, per score."""
    parts = []
    for group, g in groups.items():
        keys = [k for k in METRIC_NAMES if k in next(iter(g["mean"].values()), {})]
        header = ["score"] + [f"{_link(k, METRIC_NAMES[k], links)} %" for k in keys]
        rows = [[_link(s, s, links)] + [f"{100 * m[k]:.1f}" for k in keys] for s, m in g["mean"].items()]
        parts.append(f"<h3>{html.escape(group)}: mean over {html.escape(', '.join(g['sets']))}</h3>"
                     + _table(header, rows))
    return "\n".join(parts)


def collapse_tables(nc: dict[str, float | None], nc5: dict[str, dict[str, float]], links: Links) -> str:
    """NC1-NC4 (and accuracies) at the checkpoint, then NC5 (both variants) per OOD set."""
    first = _table(["metric (ID train features; test_* on the ID test set)", "value"],
                   [[_link(k, k, links), "–" if v is None else f"{v:.4g}"] for k, v in nc.items()])
    second = _table(["OOD set", _link("nc5", "NC5", links), _link("nc5_centred", "NC5 centred", links)],
                    [[html.escape(s), f"{m['nc5']:.4g}", f"{m['nc5_centred']:.4g}"] for s, m in nc5.items()])
    return first + second


def equations_section(equations: dict[str, tuple[str, str]], links: Links) -> str:
    """Every equation the report's numbers use, typeset by MathJax, each with its label linked to the book."""
    used = [lab for lab in dict.fromkeys(LABELS.values()) if lab in equations]
    return "\n".join(f'<div class="eq" id="{lab}"><a href="{links[lab]}">eq. {lab}</a> (chapter '
                     f"{equations[lab][0]})\\[{html.escape(equations[lab][1])}\\]</div>" for lab in used)


def _summary(report: dict[str, Any]) -> str:
    keys = ("model", "head", "feature_layer", "D", "K", "id", "val_ood", "image_size", "mean", "std", "device",
            "sizes", "command")
    items = "".join(f"<dt>{k}</dt><dd>{html.escape(str(report[k]))}</dd>" for k in keys if k in report)
    return f"<dl>{items}</dl>"


def _figures(figures: dict[str, str]) -> str:
    return "\n".join(f'<figure><img alt="{html.escape(t)}" src="{uri}"><figcaption>{html.escape(t)}</figcaption>'
                     "</figure>" for t, uri in figures.items())


STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:collapse;"
         "margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:90%}img{max-width:100%}"
         "dt{font-weight:bold}.eq{margin:1em 0}")
MATHJAX_CONFIG = "window.MathJax={tex:{inlineMath:[['\\\\(','\\\\)']]},svg:{fontCache:'global'}};"


def page(report: dict[str, Any], figures: dict[str, str], book_url: str = "", mathjax: str = "") -> str:
    """The whole HTML page: summary, OOD tables, group means, collapse, figures (``data:`` URIs), equations.

    ``mathjax`` is the text of MathJax's ``tex-svg.js``, inlined so that the equations are typeset offline."""
    equations = book_equations()
    links = equation_links(equations, book_url)
    body = [f"<h1>OOD and neural-collapse report: {html.escape(str(report.get('model', '')))}</h1>",
            _summary(report), "<h2>OOD detection (higher score = more in-distribution; OOD is the positive class "
            "of the metrics)</h2>", ood_tables(report["ood"], links), groups_table(report.get("groups", {}), links),
            "<h2>Neural collapse at this checkpoint</h2>", collapse_tables(report["collapse"], report["nc5"], links),
            "<h2>Figures</h2>", _figures(figures), "<h2>Equations</h2>", equations_section(equations, links)]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>OOD report</title><style>{STYLE}</style>"
            f"<script>{MATHJAX_CONFIG}</script><script>{mathjax}</script></head><body><main>" + "\n".join(body)
            + "</main></body></html>\n")


def write(path: Path, report: dict[str, Any], figures: dict[str, Any], book_url: str = "") -> Path:
    """Write :func:`page` to ``path`` (atomically), figures converted by :func:`figure_png`, MathJax inlined."""
    from .run import mathjax_source

    uris = {title: figure_png(fig) for title, fig in figures.items()}
    return write_text(path, page(report, uris, book_url, mathjax_source().read_text()))
