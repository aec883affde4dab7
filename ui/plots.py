"""Plotly figures and small HTML pieces for the pages. Heatmap values come from engine.attention.maps; this only draws."""
from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

COLOR_SCALES = ("Jet", "Inferno", "Viridis", "Hot", "Blues")
HOVER = "x %{x:.0f}, y %{y:.0f}<br>attention %{z:.2f}<extra></extra>"
GRID_SIDE = 160  # px, the longer side of each map in the grid of every word's map (cells are drawn ~200 px)


def small_multiples(image, heatmaps: dict[str, np.ndarray], *, opacity: float = 0.5, colorscale: str = "Jet",
                    columns: int = 4) -> go.Figure:
    """Every word's map at once, each over the image. The image is drawn at the maps' size (`GRID_SIDE`: the
    figure's JSON stays small at SDXL's 1024 px) and the axes keep the image's own pixel coordinates."""
    words = list(heatmaps)
    rows = max(1, math.ceil(len(words) / columns))
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=words, horizontal_spacing=0.02, vertical_spacing=0.06)
    map_h, map_w = np.shape(heatmaps[words[0]]) if words else (image.height, image.width)
    pixels = np.asarray(image.convert("RGB").resize((map_w, map_h), Image.BILINEAR))
    step = dict(dx=image.width / map_w, dy=image.height / map_h)
    for i, word in enumerate(words):
        row, col = i // columns + 1, i % columns + 1
        figure.add_trace(go.Image(z=pixels, hoverinfo="skip", **step), row=row, col=col)
        figure.add_trace(
            go.Heatmap(z=heatmaps[word], opacity=opacity, colorscale=colorscale, zmin=0, zmax=1, showscale=False,
                       x0=step["dx"] / 2, y0=step["dy"] / 2, hovertemplate=f"{html.escape(word)}<br>" + HOVER, **step),
            row=row, col=col,
        )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    figure.update_layout(height=200 * rows + 40, margin=dict(l=0, r=0, t=30, b=0))
    return figure


def versions_per_participant(versions: pd.DataFrame) -> go.Figure:
    counts = versions.groupby(["participant_id", "condition"], dropna=False).size().reset_index(name="versions")
    return px.bar(counts, x="participant_id", y="versions", color="condition", title="Versions per participant")


def time_between_versions(versions: pd.DataFrame) -> go.Figure:
    frame = versions.copy()
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True, errors="coerce")
    frame = frame.sort_values("created_at")
    frame["seconds"] = frame.groupby("session_id")["created_at"].diff().dt.total_seconds()
    frame = frame.dropna(subset=["seconds"])
    return px.histogram(frame, x="seconds", color="condition", nbins=30, title="Time between versions (s)")


def feature_use(events: pd.DataFrame) -> go.Figure:
    counts = events.groupby(["condition", "action"], dropna=False).size().reset_index(name="events")
    return px.bar(counts, x="action", y="events", color="condition", barmode="group", title="Feature use per condition")
