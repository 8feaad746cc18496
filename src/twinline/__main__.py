from twinline.cli import main

main()
