from veil.cli.entry import main

main()
