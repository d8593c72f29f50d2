"""The viewer's one stylesheet, served at ``viewer.css`` (no fonts, images or CDNs)."""

from __future__ import annotations

__all__ = ["CSS", "ICON"]

ICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    '<rect x="2" y="1" width="12" height="14" rx="2" fill="#0b5cad"/>'
    '<rect x="5" y="4" width="6" height="1.5" fill="#ffffff"/>'
    '<rect x="5" y="7.2" width="6" height="1.5" fill="#ffffff"/>'
    '<rect x="5" y="10.4" width="4" height="1.5" fill="#ffffff"/></svg>'
)
"""The page icon, served at ``favicon.svg``."""

CSS = """\
:root { color-scheme: light; --line: #d8dde3; --muted: #5b6672; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: #1f2328; background: #fff; }
header { display: flex; justify-content: space-between; align-items: center;
         padding: 10px 20px; border-bottom: 1px solid var(--line); background: var(--bg); }
header .home { font-weight: 600; color: inherit; text-decoration: none; }
main { padding: 12px 20px 40px; }
h1 { font-size: 20px; margin: 6px 0 12px; }
h1 small { font-weight: normal; color: var(--muted); }
h2 { font-size: 16px; margin: 22px 0 8px; }
a { color: #0b5cad; }
.badge { padding: 3px 10px; border-radius: 12px; font-size: 13px; text-decoration: none;
         border: 1px solid; }
.badge.ok { color: #14632b; background: #e6f4ea; border-color: #9fd3ad; }
.badge.bad { color: #8a1c1c; background: #fdecec; border-color: #f1a9a9; }
.badge.running { color: #6b4e00; background: #fff6d6; border-color: #e9cf7a; }
form.filters { display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: end;
               margin-bottom: 12px; }
form.filters .field { display: flex; flex-direction: column; }
form.filters label { font-size: 12px; color: var(--muted); }
form.filters input, form.filters select { font: inherit; padding: 4px 6px; width: 11em;
                                          border: 1px solid var(--line); border-radius: 4px; }
button { font: inherit; padding: 4px 12px; border: 1px solid #0b5cad; background: #0b5cad;
         color: #fff; border-radius: 4px; cursor: pointer; }
.error { color: #8a1c1c; background: #fdecec; padding: 6px 10px; border-radius: 4px; }
.activity { border: 1px solid var(--line); border-radius: 6px; padding: 8px; margin: 8px 0; }
.activity svg { width: 100%; height: auto; display: block; }
.note, .downloads { color: var(--muted); font-size: 13px; margin: 4px 0; }
table.events { border-collapse: collapse; width: 100%; margin-top: 8px; }
table.events th, table.events td { border-bottom: 1px solid var(--line); padding: 6px 8px;
                                   text-align: left; vertical-align: top; }
table.events th { background: var(--bg); font-weight: 600; font-size: 13px; }
td.when, td.seq { white-space: nowrap; font-variant-numeric: tabular-nums; }
td.action { font-family: ui-monospace, monospace; font-size: 13px; }
td.empty { color: var(--muted); text-align: center; padding: 24px; }
table.changes { border-collapse: collapse; font-size: 13px; }
table.changes th { font-weight: normal; color: var(--muted); padding: 0 8px 0 0;
                   text-align: left; }
table.changes td { padding: 0 4px; }
table.changes.wide { width: 100%; }
table.changes.wide th, table.changes.wide td { border-bottom: 1px solid var(--line);
                                              padding: 4px 8px; }
.before { color: #8a1c1c; background: #fdf1f1; }
.after { color: #14632b; background: #eef8f0; }
.arrow { color: var(--muted); }
table.fields th { text-align: left; color: var(--muted); font-weight: normal;
                  padding: 2px 16px 2px 0; }
table.fields td { font-family: ui-monospace, monospace; font-size: 13px;
                  word-break: break-all; }
pre.record { background: var(--bg); border: 1px solid var(--line); padding: 10px;
             overflow-x: auto; font-size: 12px; }
nav.paging { margin-top: 12px; display: flex; gap: 16px; }
"""
