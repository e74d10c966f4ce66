from modelfoundry.cli import main

main()
