import streamlit as st

st.title("Attune")
st.write("Interactive text-to-image refinement lab. The app pages are being built.")
