"""``pdplan hardware list`` and ``pdplan hardware show NAME|FILE.yaml``: the GPU catalog as data.

``list`` prints one row per catalog GPU (memory, dense bf16/fp8 TFLOP/s, DRAM GB/s, links, price);
``show`` prints every field of one entry, or of a ``--hardware`` YAML file after validation, with
its datasheet source, as YAML that ``--hardware FILE.yaml`` accepts back.
"""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="The hardware catalog: list it, or show one entry (or a .yaml file) in full.")


@app.command("list")
def list_hardware() -> None:
    """One line per catalog GPU (``cpu`` is detected at run time and not listed)."""
    from rich.console import Console
    from rich.table import Table

    from pdplan.profiles.hardware import CATALOG

    table = Table(title="pdplan hardware catalog (per GPU; dense tensor peaks)", title_justify="left")
    for column in (
        "name",
        "memory GiB",
        "bf16 TFLOP/s",
        "fp8 TFLOP/s",
        "DRAM GB/s",
        "intra-node GB/s",
        "inter-node GB/s",
    ):
        table.add_column(column, justify="left" if column == "name" else "right")
    table.add_column("description")
    for hw in CATALOG.values():
        table.add_row(
            hw.name,
            f"{hw.memory_bytes / (1 << 30):g}",
            f"{hw.peak_bf16_tflops:g}",
            "-" if hw.peak_fp8_tflops is None else f"{hw.peak_fp8_tflops:g}",
            f"{hw.mem_bandwidth_gbps:g}",
            f"{hw.link_bandwidth_gbps:g} {hw.intra_node_link}",
            "-" if hw.inter_node_bandwidth_gbps is None else f"{hw.inter_node_bandwidth_gbps:g}",
            hw.description,
        )
    Console(width=200).print(table)


@app.command("show")
def show_hardware(
    name: Annotated[str, typer.Argument(help="A catalog name (see `pdplan hardware list`) or a .yaml file.")],
) -> None:
    """Every field of one entry, as YAML (``--hardware`` accepts the output back as a file)."""
    from dataclasses import asdict

    import yaml

    from pdplan.profiles.hardware import get_hardware

    hw = get_hardware(name)
    fields = {k: v for k, v in asdict(hw).items() if v is not None and v != ""}
    memory = fields.pop("memory_bytes")
    fields = {"name": fields.pop("name"), "memory_gib": memory / (1 << 30), **fields}
    typer.echo(yaml.safe_dump(fields, sort_keys=False, allow_unicode=True, width=100), nl=False)
