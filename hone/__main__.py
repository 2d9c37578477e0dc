from hone.cli import main

main()
