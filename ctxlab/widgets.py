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


def html_views(htmls: Sequence[str]) -> list[widgets.HTML]:
    """HTML widgets sharing one layout and one style, so many views add one model each to the page."""
    if not htmls:
        return []
    first = widgets.HTML(value=htmls[0])
    return [first] + [widgets.HTML(value=html, layout=first.layout, style=first.style) for html in htmls[1:]]


def precomputed_choices(axes: Sequence[tuple[str, Sequence[object]]], views: Sequence[widgets.Widget],
                        slider_axis: int | None = None) -> widgets.VBox:
    """One control per axis over the views of every combination, switched in the browser.

    ``views`` is the flat list over the product of the axes, the last axis varying fastest. Each axis
    gets a dropdown (``slider_axis``: a slider with a dropdown readout, as in :func:`precomputed_slider`);
    the views sit in nested ``Stack`` s, one level per axis, and each control is ``jslink`` ed to every
    stack of its level, so any combination shows without a kernel.
    """
    sizes = [len(labels) for _, labels in axes]
    total = 1
    for n in sizes:
        total *= n
    if not axes or 0 in sizes or len(views) != total:
        raise ValueError(f"views must hold one view per combination of the axes ({' x '.join(map(str, sizes))} = "
                         f"{total}), got {len(views)}")
    if slider_axis is not None and slider_axis not in range(len(axes)):
        raise ValueError(f"slider_axis must be None or in [0, {len(axes)}), got {slider_axis!r}")
    levels: list[list[widgets.Stack]] = [[] for _ in axes]

    def nest(level: int, leaves: list[widgets.Widget]) -> widgets.Widget:
        if level == len(axes):
            return leaves[0]
        step = len(leaves) // sizes[level]
        stack = widgets.Stack(children=[nest(level + 1, leaves[i * step:(i + 1) * step]) for i in range(sizes[level])],
                              selected_index=0)
        levels[level].append(stack)
        return stack

    root = nest(0, list(views))
    dropdowns, slider_row = [], None
    for level, (name, labels) in enumerate(axes):
        dropdown = widgets.Dropdown(options=[(str(lab), i) for i, lab in enumerate(labels)], value=0,
                                    description="" if level == slider_axis else name,
                                    layout=widgets.Layout(width="120px" if level == slider_axis else "auto"))
        for stack in levels[level]:
            widgets.jslink((dropdown, "index"), (stack, "selected_index"))
        if level != slider_axis:
            dropdowns.append(dropdown)
            continue
        slider = widgets.IntSlider(value=0, min=0, max=sizes[level] - 1, description=name, readout=False)
        widgets.jslink((slider, "value"), (dropdown, "index"))
        for stack in levels[level]:
            widgets.jslink((slider, "value"), (stack, "selected_index"))
        slider_row = widgets.HBox([slider, dropdown])
    # the slider sits in a box with the views alone, as in precomputed_slider; the dropdowns above it
    views_box = widgets.VBox([root] if slider_row is None else [slider_row, root])
    return widgets.VBox([widgets.HBox(dropdowns), views_box])
