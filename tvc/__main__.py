from tvc.cli import main

main()
