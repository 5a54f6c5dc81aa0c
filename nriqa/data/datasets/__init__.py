"""One module per dataset, each holding the dataset's :class:`~nriqa.data.spec.DatasetSpec`
(``SPEC``) beside its label-file readers. :mod:`nriqa.data.registry` collects them; to add a
dataset, write its module here and add it to the registry's ``_MODULES``."""
