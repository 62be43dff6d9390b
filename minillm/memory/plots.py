"""Pictures of KV memory for chapters 3 and 4 (matplotlib, imported only when drawing)."""
from __future__ import annotations

import numpy as np

from minillm.memory.contiguous import MAP_LABELS

# free, token, reserved, never used, external, tail
MAP_COLORS = ("#f2f2f2", "#2b8a3e", "#a9d18e", "#f4a261", "#d62828", "#9d4edd")


def map_colormap():
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(MAP_COLORS)
    return cmap, BoundaryNorm(np.arange(len(MAP_COLORS) + 1) - 0.5, len(MAP_COLORS))


def plot_memory_map(ax, result, title: str | None = None, legend: bool = True,
                    max_step: int | None = None):
    """The replay's memory over time: one row per recorded step, one column per token slot.

    `max_step` cuts the picture after that step (the first steps show the mechanism best).
    """
    from matplotlib.patches import Patch

    cmap, norm = map_colormap()
    rows = [i for i, s in enumerate(result.map_steps) if max_step is None or s <= max_step]
    image = np.stack([result.maps[i] for i in rows])
    last = result.map_steps[rows[-1]]
    ax.imshow(image, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm,
              extent=(0, result.capacity, last, result.map_steps[0]))
    ax.set_xlabel("KV memory (token slots)")
    ax.set_ylabel("engine step")
    ax.set_title(title or result.allocator)
    if legend:
        codes = sorted(set(np.unique(image)))
        ax.legend(handles=[Patch(color=MAP_COLORS[c], label=MAP_LABELS[c]) for c in codes],
                  loc="lower right", fontsize=7, framealpha=0.9)
    return ax


def plot_map_row(ax, codes: np.ndarray, title: str = ""):
    """One step's memory map as a strip (what the chapter 3/4 sliders show)."""
    cmap, norm = map_colormap()
    ax.imshow(codes[None, :], aspect="auto", interpolation="nearest", cmap=cmap, norm=norm,
              extent=(0, len(codes), 0, 1))
    ax.set_yticks([])
    ax.set_xlabel("KV memory (token slots)")
    ax.set_title(title, fontsize=9)
    return ax


def plot_breakdown(ax, results: dict, keys=("tokens", "reservation", "internal", "external")):
    """Stacked bars: where the KV memory in use went, per allocator."""
    colors = {"tokens": MAP_COLORS[1], "reservation": MAP_COLORS[2], "internal": MAP_COLORS[3],
              "external": MAP_COLORS[4]}
    labels = {"tokens": "real tokens", "reservation": "reservation (future tokens)",
              "internal": "internal frag. (held, left empty)",
              "external": "external frag. (unusable holes)"}
    names = list(results)
    bottom = np.zeros(len(names))
    for key in keys:
        share = np.array([100 * results[n].summary()[
            "token_share" if key == "tokens" else f"{key}_share"] for n in names])
        ax.bar([results[n].allocator for n in names], share, bottom=bottom, color=colors[key],
               label=labels[key])
        bottom += share
    ax.set_ylabel("% of the KV memory in use")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return ax


def plot_block_tables(ax, manager, seqs: dict, colors: dict | None = None):
    """Physical KV memory as a grid: one row per block, one cell per slot, each filled slot
    labelled with its sequence's name and token index, found through that sequence's block table
    (chapter 4's picture). `seqs` maps a name to a `Sequence`; empty cells are free slots.
    """
    from matplotlib.patches import Rectangle

    size, num_blocks = manager.block_size, manager.num_blocks
    palette = iter(("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"))
    colors = colors or {name: next(palette) for name in seqs}
    for name, seq in seqs.items():
        for t in range(seq.num_computed_tokens):
            block, offset = seq.block_table[t // size], t % size
            ax.add_patch(Rectangle((offset, block), 0.95, 0.9, color=colors[name]))
            ax.text(offset + 0.45, block + 0.45, f"{name}{t}", ha="center", va="center",
                    fontsize=7, color="white")
    for block in range(num_blocks):
        for offset in range(size):
            ax.add_patch(Rectangle((offset, block), 0.95, 0.9, fill=False, ec="#bbb"))
    ax.set_xlim(0, size)
    ax.set_ylim(num_blocks, 0)
    ax.set_xticks([s + 0.475 for s in range(size)], range(size))
    ax.set_yticks([b + 0.45 for b in range(num_blocks)], range(num_blocks))
    ax.set_xlabel("slot in block")
    ax.set_ylabel("physical block")
    ax.set_title("Block tables: " + ", ".join(f"{name} → {seq.block_table}"
                                              for name, seq in seqs.items()), fontsize=9)
    return ax


def request_color(request_id: str) -> str:
    """A request's colour in block maps, the same at every step (tab10 by id)."""
    import zlib

    from matplotlib import colormaps

    index = int(request_id) if request_id.isdigit() else zlib.crc32(request_id.encode())
    return colormaps["tab10"](index % 10)


def plot_block_map(ax, snap, columns: int = 16, title: str | None = None):
    """An engine snapshot's KV blocks as a grid (chapter 8's widget): a held block in the colour
    of its request (one stripe per request when several share it, its reference count written
    when above 1, a thick outline when shared), a free block blank, a cached-free block hatched.
    `snap` is a `minillm.engine.snapshot.EngineSnapshot`."""
    from matplotlib.patches import Patch, Rectangle

    rows = -(-snap.num_blocks // columns)
    for info in snap.blocks:
        x, y = info.block_id % columns, info.block_id // columns
        owners = sorted(set(info.owners), key=info.owners.index)
        for k, owner in enumerate(owners):  # stripes, one per request
            ax.add_patch(Rectangle((x, y + k * 0.9 / len(owners)), 0.9, 0.9 / len(owners),
                                   color=request_color(owner)))
        if info.state == "cached":
            ax.add_patch(Rectangle((x, y), 0.9, 0.9, fc="#f2f2f2", ec="#888", hatch="////",
                                   lw=0.5))
        shared = info.state == "shared"
        ax.add_patch(Rectangle((x, y), 0.9, 0.9, fill=False, ec="black" if shared else "#bbb",
                               lw=2.2 if shared else 0.6))
        label = f"{info.block_id}" + (f"\n×{info.ref_count}" if shared else "")
        ax.text(x + 0.45, y + 0.45, label, ha="center", va="center", fontsize=6,
                color="black" if info.state in ("free", "cached") else "white")
    ax.set_xlim(-0.1, columns)
    ax.set_ylim(rows, -0.1)
    ax.set_aspect("equal")
    ax.axis("off")
    held = sorted({o for b in snap.blocks for o in b.owners}, key=lambda r: (len(r), r))
    handles = [Patch(color=request_color(r), label=f"request {r}") for r in held]
    handles += [Patch(fc="white", ec="black", lw=2, label="shared (×refs)"),
                Patch(fc="#f2f2f2", ec="#888", hatch="////", label="cached, free"),
                Patch(fc="white", ec="#bbb", label="free")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    figures = snap.figures()
    ax.set_title(title or f"{figures['owned'] + figures['shared']} blocks held "
                          f"({figures['shared']} shared), {figures['cached']} cached, "
                          f"{figures['free'] - figures['cached']} free", fontsize=9)
    return ax
