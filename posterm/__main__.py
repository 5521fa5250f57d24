from posterm.cli import main

main()
