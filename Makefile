# The two commands of the README. Both create or reuse .venv and install first.
.PHONY: reproduce test setup
reproduce:  ## run the numbered notebooks on params/mini.yaml (per seed, less runtime.skip_notebooks) into outputs/mini/
	bash scripts/reproduce.sh
test:  ## run the whole test suite (pytest, then nbval over notebooks/)
	bash scripts/test.sh
setup:
	bash scripts/setup.sh
