"""Every file of an evaluation (`write_evaluation`), and report.html: one HTML file that opens offline,
with true vs predicted positions joined by lines on the page's base map, the error CDF and reliability
diagrams, and the table of methods with intervals.

Self-contained on purpose (Leaflet, the borders and the PNGs are inlined): a report is mailed, archived
and opened from disk years later, when no server and no CDN can be counted on.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd

from geopin.evaluation.crossval import SCENARIO_LABELS
from geopin.evaluation.plots import write_plots
from geopin.evaluation.tables import (
    format_calibration_table,
    format_methods_table,
    paired_lines,
    report_for_json,
)
from geopin.geo import haversine_km
from geopin.io import write_json, write_parquet, write_text

log = logging.getLogger(__name__)

#: The page's own folder: the report uses the same vendor files and base map code.
WEB_DIR = Path(__file__).resolve().parents[1] / "web"


@dataclass(frozen=True)
class ReportConfig:
    max_lines: int = 20_000  # per scenario: beyond this, an even sample is drawn (and the report says so)
    borders: str = "countries-110m.json"  # world-atlas file inlined: 110m keeps the report ~0.5 MB
    title: str = "geopin evaluation"


def write_evaluation(report: dict, man: pd.DataFrame, out: Path) -> tuple[dict, list[Path], Path]:
    """Per-photo predictions, plots, report.json and report.html (`geopin evaluate` and `geopin build`)."""
    out.mkdir(parents=True, exist_ok=True)
    for sc, df in report["per_photo"].items():
        df = df.copy()
        df.insert(0, "id", man["id"].to_numpy()[df.row.to_numpy()])
        write_parquet(df, out / f"predictions_{sc}.parquet")
    plots = write_plots(report, out)
    doc = report_for_json(report)
    doc["plots"] = [str(p) for p in plots]
    write_json(doc, out / "report.json")
    html = write_report(report, out, ids=man["id"].astype(str).tolist())  # the same, to look at offline
    return doc, plots, html


def write_report(report: dict, out_dir: Path, ids: Sequence[str] | None = None,
                 cfg: ReportConfig | None = None) -> Path:
    """Write `out_dir/report.html` from an `evaluate_cv` report and the PNGs `write_plots` put in out_dir.

    `ids` names each photo by its row in the evaluated data (the manifest's id), for the lines' tooltips.
    A missing PNG is said in the report, not fatal: the numbers matter more than the figures.
    `cfg` None: ReportConfig's defaults.
    """
    cfg = ReportConfig() if cfg is None else cfg
    out_dir = Path(out_dir)
    sections, lines = [], {}
    for sc in report["scenarios"]:
        df = report.get("per_photo", {}).get(sc)
        data, note = ([], "no per-photo predictions in this report") if df is None else _lines(df, ids, cfg.max_lines)
        lines[sc] = data
        sections.append(_section(report, sc, out_dir, note))
    for sc, why in report.get("skipped", {}).items():
        label = SCENARIO_LABELS.get(sc, sc)
        sections.append(f'<section><h2>{_t(label)}</h2><p class="note">skipped: {_t(why)}</p></section>')
    html = _PAGE.format(
        title=_t(cfg.title),
        n=report.get("n", 0),
        leaflet_css=_vendor("leaflet/leaflet.css"),
        leaflet_js=_script(_vendor("leaflet/leaflet.js")),
        topojson_js=_script(_vendor("topojson-client/topojson-client.min.js")),
        basemap_js=_script((WEB_DIR / "basemap.js").read_text()),
        world=_json_in_html(json.loads(_vendor(f"world-atlas/{cfg.borders}"))),
        lines=_json_in_html(lines),
        sections="\n".join(sections),
    )
    path = out_dir / "report.html"
    write_text(html, path)
    log.info("report: %s (%d scenarios, %d lines)", path, len(lines), sum(len(v) for v in lines.values()))
    return path


def _lines(df: pd.DataFrame, ids: Sequence[str] | None, max_lines: int) -> tuple[list[dict], str]:
    """One record per photo: true and predicted position, error in km, the photo's id."""
    t_lat, t_lon = df.true_lat.to_numpy(float), df.true_lon.to_numpy(float)
    p_lat, p_lon = df.model_lat.to_numpy(float), df.model_lon.to_numpy(float)
    err = haversine_km(t_lat, t_lon, p_lat, p_lon)
    t_lon, p_lon = short_way(t_lon, p_lon)
    rows = df["row"].to_numpy() if "row" in df else np.arange(len(df))
    keep = np.arange(len(df))
    note = ""
    if len(df) > max_lines:
        keep = np.linspace(0, len(df) - 1, max_lines).round().astype(int)
        note = f"{max_lines:,} of {len(df):,} photos drawn (an even sample), to keep the page responsive"
    out = []
    for i in keep:
        name = str(ids[rows[i]]) if ids is not None and rows[i] < len(ids) else f"row {rows[i]}"
        out.append({"t": [round(t_lat[i], 5), round(t_lon[i], 5)], "p": [round(p_lat[i], 5), round(p_lon[i], 5)],
                    "e": round(float(err[i]), 1), "id": name})
    return out, note


def short_way(a_lon: np.ndarray, b_lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitudes of line ends drawn the short way round, each line's midpoint kept on [-180, 180].

    A line from 170 E to 170 W crosses the antimeridian (b becomes 190), not the whole map; a line whose
    midpoint then lies past 180 is moved a whole turn west, so no end lies beyond 270 degrees: well within
    the base map's pan limit (basemap.js PAN_LON, 540, with the world drawn three times)."""
    a_lon = np.asarray(a_lon, dtype=float)
    b_lon = np.asarray(b_lon, dtype=float)
    b_lon = b_lon + 360.0 * np.round((a_lon - b_lon) / 360.0)
    turn = 360.0 * np.round((a_lon + b_lon) / 720.0)
    return a_lon - turn, b_lon - turn


def _section(report: dict, sc: str, out_dir: Path, note: str) -> str:
    header, table = format_methods_table(report, sc)
    head_lines = [ln.strip().lstrip("= ").strip() for ln in header.splitlines()]
    parts = [f'<section id="scenario-{_t(sc)}">', f"<h2>{_t(head_lines[0])}</h2>"]
    parts += [f'<p class="note">{_t(ln)}</p>' for ln in head_lines[1:]]
    parts.append(table.to_html(index=False, escape=True, classes="methods", border=0))
    paired = paired_lines(report, sc)
    if paired:
        parts.append("<ul class=\"paired\">" + "".join(f"<li>{_t(p)}</li>" for p in paired) + "</ul>")
    parts.append("<h3>True (blue) and predicted (red) positions, joined</h3>")
    if note:
        parts.append(f'<p class="note">{_t(note)}</p>')
    parts.append(f'<div class="map" id="map-{_t(sc)}" data-scenario="{_t(sc)}"></div>')
    parts.append('<div class="figures">')
    for name, caption in ((f"error_cdf_{sc}.png", "Error CDF of every method"),
                          (f"reliability_{sc}.png", "Reliability of the stated within-km confidences")):
        parts.append(_figure(out_dir / name, caption))
    parts.append("</div>")
    parts.append("<h3>Calibration</h3>")
    parts.append(format_calibration_table(report, sc).to_html(index=False, escape=True, classes="calibration", border=0))
    parts.append("</section>")
    return "\n".join(parts)


def _figure(path: Path, caption: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        log.warning("report: %s not embedded (%s)", path, exc.strerror or exc)
        return f'<figure><p class="note">{_t(path.name)} was not written ({_t(exc.strerror or str(exc))}).</p></figure>'
    b64 = base64.b64encode(data).decode("ascii")
    return f'<figure><img alt="{_t(caption)}" src="data:image/png;base64,{b64}"><figcaption>{_t(caption)}</figcaption></figure>'


def _vendor(rel: str) -> str:
    return (WEB_DIR / "vendor" / rel).read_text(encoding="utf-8")


def _script(js: str) -> str:
    return js.replace("</script", "<\\/script")  # the inlined code must not end its own <script> element


def _json_in_html(obj) -> str:
    """JSON for a <script type="application/json"> block: '<' escaped, so no text can close the block or add markup."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _t(text) -> str:
    return escape(str(text), quote=True)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{leaflet_css}</style>
<style>
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2430;
       margin: 0 auto; max-width: 1200px; padding: 1em 1.5em; background: #f4f5f7; }}
h1 {{ margin: 0.2em 0; }} h2 {{ margin-top: 1.6em; border-bottom: 1px solid #c9ced6; }}
.note {{ color: #56606f; margin: 0.2em 0; }}
table {{ border-collapse: collapse; background: #fff; font-size: 0.88em; margin: 0.6em 0; }}
th, td {{ padding: 3px 8px; border-bottom: 1px solid #e3e6ea; text-align: right; white-space: nowrap; }}
th:first-child, td:first-child {{ text-align: left; }}
.map {{ height: 480px; border: 1px solid #c9ced6; border-radius: 6px; }}
.leaflet-container {{ background: #cfe3f3; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1em; }}
figure {{ margin: 0; background: #fff; padding: 0.5em; border-radius: 6px; }}
figure img {{ max-width: 560px; width: 100%; }}
figcaption {{ font-size: 0.85em; color: #56606f; }}
.legend {{ background: rgba(255,255,255,0.92); padding: 6px 8px; border-radius: 4px; font-size: 12px; line-height: 1.6; }}
.legend i {{ display: inline-block; width: 14px; height: 3px; margin-right: 6px; vertical-align: 3px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="note">{n} photos. Every figure comes with its 95 % interval over photographers (or photos). Opens offline:
everything is inside this file. Country borders: Natural Earth (public domain) via world-atlas; map: Leaflet (BSD-2-Clause).</p>
{sections}
<script type="application/json" id="world">{world}</script>
<script type="application/json" id="lines">{lines}</script>
<script>{leaflet_js}</script>
<script>{topojson_js}</script>
<script>{basemap_js}</script>
<script>
(function () {{
  "use strict";
  var world = JSON.parse(document.getElementById("world").textContent);
  var data = JSON.parse(document.getElementById("lines").textContent);
  function colour(km) {{ return km <= 25 ? "#1b8a4a" : km <= 750 ? "#e69f00" : "#d1402f"; }}
  Object.keys(data).forEach(function (sc) {{
    var el = document.getElementById("map-" + sc);
    if (!el) return;
    var map = geopinBaseMap(el, world);
    var rows = data[sc];
    rows.forEach(function (r) {{
      L.polyline([r.t, r.p], {{ className: "error-line", color: colour(r.e), weight: 1, opacity: 0.55 }})
        .bindTooltip(r.id + ": " + r.e.toLocaleString("en") + " km off").addTo(map);
    }});
    rows.forEach(function (r) {{
      L.circleMarker(r.t, {{ className: "true-point", radius: 2.5, color: "#1f5fbf", weight: 1, fillOpacity: 0.8, interactive: false }}).addTo(map);
      L.circleMarker(r.p, {{ className: "pred-point", radius: 3, color: "#d1402f", weight: 1, fillOpacity: 0.8, interactive: false }}).addTo(map);
    }});
    var legend = L.control({{ position: "bottomleft" }});
    legend.onAdd = function () {{
      var d = L.DomUtil.create("div", "legend");
      d.innerHTML = "<div><i style='background:#1b8a4a'></i>within 25 km</div>" +
        "<div><i style='background:#e69f00'></i>25 to 750 km</div><div><i style='background:#d1402f'></i>beyond 750 km</div>" +
        "<div>blue dot: true place; red dot: guess</div>";
      return d;
    }};
    legend.addTo(map);
  }});
  document.body.dataset.mapsReady = "1";
}})();
</script>
</body>
</html>
"""

__all__ = ["WEB_DIR", "ReportConfig", "short_way", "write_evaluation", "write_report"]
