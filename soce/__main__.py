from soce.cli import main

main()
