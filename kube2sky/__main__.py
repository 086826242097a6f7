"""`python -m kube2sky` runs the kube2sky command."""

from kube2sky import cli

if __name__ == "__main__":
    cli.main()
