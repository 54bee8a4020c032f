"""生育登记 on the person's signed commitment (首接责任制、承诺制)."""
