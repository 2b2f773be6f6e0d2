"""`pdplan profile` (being written)."""

import typer


def profile(model: str = typer.Option(..., "--model", help="Catalog name or config.json path.")) -> None:
    """Measure or model prefill/decode costs."""
    from pdplan.profiles.model_spec import load_model_spec

    spec = load_model_spec(model)
    typer.echo(f"{spec.name}: {spec.num_params / 1e9:.2f}B params")
