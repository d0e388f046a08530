import sys

from latent_ddpm.cli import main

sys.exit(main())
