from kimpki.cli.main import main

main()
