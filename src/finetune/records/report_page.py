"""index.html pages: a run's report and a sweep's leaderboard, one self-contained file each.

Pictures are embedded as data: URLs, so the page opens from a file:// URL, from an e-mail
attachment or from an artifact store alike, with nothing beside it. Jinja2 (which PyTorch
already installs) escapes every value: class names and overrides come from users.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef; } td.text { text-align: left; }
tr.wrong td { background: #fde8e8; } tr.failed td { color: #a33; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.4em 0; }
"""

RUN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>{{ title }}</h1>
<table>{% for key, value in summary.items() %}
<tr><th>{{ key }}</th><td>{{ value | fmt }}</td></tr>{% endfor %}
</table>
{% if "curves" in pictures %}<h2>Learning curves</h2>
<img alt="learning curves" src="{{ pictures.curves }}">{% endif %}
<h2>Confusion matrix</h2>
<img alt="confusion matrix" src="{{ pictures.confusion }}">
<h2>Per class</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{% for row in classes %}<tr><td class="text">{{ row["class"] }}</td>
<td>{{ row.precision | fmt }}</td><td>{{ row.recall | fmt }}</td><td>{{ row.f1 | fmt }}</td>
<td>{{ row.support }}</td></tr>
{% endfor %}</table>
<h2>{{ table_heading }}</h2>
{% if "top_losses" in pictures %}<img alt="top losses" src="{{ pictures.top_losses }}">{% endif %}
<table><tr><th>{{ name_column }}</th>
<th>true</th><th>predicted</th><th>probability</th><th>loss</th></tr>
{% for row in losses %}<tr class="{{ 'wrong' if row.true != row.predicted }}">
<td class="text">{{ row[name_column] }}</td><td class="text">{{ row.true }}</td>
<td class="text">{{ row.predicted }}</td><td>{{ row.probability | fmt }}</td>
<td>{{ row.loss | fmt }}</td></tr>
{% endfor %}</table>
<h2>Calibration</h2>
<img alt="reliability diagram" src="{{ pictures.reliability }}">
</body></html>
"""

SWEEP_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>{{ style }}</style></head><body>
<h1>{{ title }}</h1>
<p>{{ rows | length }} jobs, best first by {{ monitor }} ({{ mode }}).</p>
<table><tr>{% for column in columns %}<th>{{ column }}</th>{% endfor %}</tr>
{% for row in rows %}<tr class="{{ '' if row.status == 'completed' else 'failed' }}">
{% for column in columns %}<td class="text">{{ row[column] | fmt }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% if "curves" in pictures %}<h2>Learning curves of all jobs</h2>
<img alt="learning curves" src="{{ pictures.curves }}">{% endif %}
</body></html>
"""


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def render(template: str, **values: Any) -> str:
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["fmt"] = fmt
    return environment.from_string(template).render(style=STYLE, **values)


def write_html(path: Path, html: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    return path


def write_page(
    path: Path,
    title: str,
    summary: dict[str, Any],
    pictures: dict[str, bytes],
    classes: list[dict[str, Any]],
    losses: list[dict[str, Any]],
    table: tuple[str, str] = ("Top losses: the images the model got most wrong", "file"),
) -> Path:
    """The run report's index.html; `table` is the losses table's heading and name column."""
    urls = {name: data_url(png) for name, png in pictures.items()}
    heading, column = table
    html = render(
        RUN_PAGE, title=title, summary=summary, pictures=urls, classes=classes, losses=losses,
        table_heading=heading, name_column=column,
    )  # fmt: skip
    return write_html(path, html)


def write_sweep_page(
    path: Path,
    title: str,
    rows: list[dict[str, Any]],
    columns: list[str],
    monitor: str,
    mode: str,
    curves: bytes | None,
) -> Path:
    """The sweep directory's index.html: the leaderboard and every job's learning curves."""
    pictures = {"curves": data_url(curves)} if curves else {}
    html = render(
        SWEEP_PAGE,
        title=title,
        rows=rows,
        columns=columns,
        monitor=monitor,
        mode=mode,
        pictures=pictures,
    )
    return write_html(path, html)
