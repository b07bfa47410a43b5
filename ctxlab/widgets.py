"""ipywidgets UIs that still work in the rendered (kernel-less) page.

Each view is computed in Python once, and a slider is linked to a ``Stack`` of those views with
``jslink``: the link runs in the browser, so dragging works without a kernel. With a kernel the views
were computed on the reader's own device when the cell ran.
"""
from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets


def precomputed_slider(labels: Sequence[object], views: Sequence[widgets.Widget], description: str = "T") -> widgets.VBox:
    """A selection slider over ``labels`` that shows ``views[i]`` for label i, linked in the browser."""
    if len(labels) != len(views) or not labels:
        raise ValueError(f"labels and views must be non-empty and of equal length, got {len(labels)} and {len(views)}")
    slider = widgets.IntSlider(value=0, min=0, max=len(labels) - 1, description=description, readout=False,
                               continuous_update=True)
    readout = widgets.Dropdown(options=[(str(lab), i) for i, lab in enumerate(labels)], value=0,
                               layout=widgets.Layout(width="120px"))
    stack = widgets.Stack(children=list(views), selected_index=0)
    widgets.jslink((slider, "value"), (stack, "selected_index"))
    widgets.jslink((slider, "value"), (readout, "index"))
    return widgets.VBox([widgets.HBox([slider, readout]), stack])


def image_views(pngs: Sequence[bytes]) -> list[widgets.Image]:
    """Image widgets from PNG bytes; their pixels are stored in the notebook's widget state."""
    return [widgets.Image(value=png, format="png") for png in pngs]
