"""Figure and table code shared by the notebooks, ``make figures`` and the tests.

``runs`` turns run folders into tidy tables, ``figures`` draws them (and executes the
notebooks), ``complexity`` rates examples with a judge model, ``published`` holds the
papers' numbers with their provenance.
"""
