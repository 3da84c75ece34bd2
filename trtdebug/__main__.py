from trtdebug.cli.app import main

main()
