from veil.cli.main import app

app(prog_name="veil")
