from shelfcast.cli import main

main()
