from tvc.cli.main import main

main()
