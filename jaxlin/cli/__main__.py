from jaxlin.cli.main import console

console()
